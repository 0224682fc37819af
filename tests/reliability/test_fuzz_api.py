"""Scenario 6: hostile specs through the real API server (hypothesis).

Generated executions -- wrong types, out-of-range numbers, actions and parameter blocks
that do not match, huge and unicode strings, deeply nested patches and manifests, odd
names, stray spec fields -- are created as the admin in untrusted namespaces. Each one is
either rejected by the API server (schema, CEL, admission: a 4xx) or, once created,
settles with a reason (Failed, or a safe state such as WaitingApproval/Completed for the
rare spec that is valid) with every transition in the audit store exactly once. The
controller never crashes and logs no traceback, and valid executions created in between
keep completing. The short variant draws a fixed set (derandomized: CI is reproducible);
the long one a fresh set each run."""

from __future__ import annotations

import json
import time
import urllib.error
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devstack.harness import GROUP_PATH, free_port
from kexec.domain.actions import ACTIONS
from tests.reliability.conftest import LONG, Reliability, record, size

pytestmark = pytest.mark.cluster

MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's limit on a request body
NAMES = sorted({p.name for a in ACTIONS.values() for p in a.params_doc} | {"namespace", "name", "kind"})
KEYS = sorted(a.key for a in ACTIONS.values())
SPEC_FIELDS = ("maxRetries", "timeout", "dryRun", "approvalReceived", "approvedBy", "targetCluster",
               "workflowName", "stepNumber", "rollbackOf")

odd_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=300),
    st.sampled_from(["", " ", "web", "Web", "-web", "web-", "a.b", "a/b", "..", "x" * 64, "ä", "😀", "\u202e",
                     "kube-system", "kubernaut-system", "default", "sim-node-1", "*", "$(id)", "'; DROP TABLE x; --",
                     "${jndi:ldap://x}", "\x00", "a" * 254]),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "😀", "-"]), st.integers(1000, 200_000)),
)
numbers = st.one_of(st.integers(), st.integers(-5, 5), st.integers(990, 1010), st.sampled_from([2**31, 2**63, -2**63]),
                    st.floats(allow_nan=False, allow_infinity=False))
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)


def deep(depth: int) -> Any:
    """A dict nested ``depth`` levels (deep patches and manifests)."""
    out: Any = {"leaf": "x"}
    for i in range(depth):
        out = {f"k{i % 3}": out, "spec": out} if i < 3 else {f"k{i % 3}": out}
    return out


json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), inner, max_size=4)),
    max_leaves=12) | st.builds(deep, st.integers(5, 120))


OWN_NS = "own-ns-placeholder"  # replaced by the execution's namespace: judged past the namespace rule
labels = st.just(OWN_NS) | st.just(OWN_NS) | st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z") | st.sampled_from(
    ["default", "kube-system", "kubernaut-system", "web", "sim-node-1", "sim-node-2"])
subdomains = labels | st.from_regex(r"\A[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}\Z")


def well_typed(p: Any) -> st.SearchStrategy[Any]:
    """Values the API server's schema accepts for ``p`` (so the controller has to judge them)."""
    if p.type == "label":
        return labels
    if p.type == "name":
        return subdomains
    if p.type == "integer":
        lo, hi = p.minimum, p.maximum
        return st.integers(-2**31 if lo is None else lo, 2**31 if hi is None else hi)
    if p.type == "boolean":
        return st.booleans()
    if p.type == "enum":
        return st.sampled_from(p.enum)
    if p.type == "stringmap":
        return st.dictionaries(st.text(max_size=20) | labels, odd_text | st.none(), max_size=4)
    if p.type == "ref":
        return st.fixed_dictionaries({"name": subdomains})
    manifests = st.fixed_dictionaries({
        "apiVersion": st.sampled_from(["v1", "apps/v1", "rbac.authorization.k8s.io/v1", "x/y"]),
        "kind": st.sampled_from(["ConfigMap", "Deployment", "Secret", "ClusterRole", "Namespace", "Pod", "Node"]),
        "metadata": st.fixed_dictionaries({"name": subdomains, "namespace": labels}),
    }, optional={"data": json_values, "spec": json_values, "rules": json_values})
    return manifests | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=10), json_values, max_size=5) | \
        st.builds(deep, st.integers(5, 120))  # object / patch: anything nested, deep


@st.composite
def parameters(draw: st.DrawFn, action: str) -> Any:
    if action in ACTIONS and draw(st.integers(0, 2)):  # well typed, so the controller must judge it
        decl = ACTIONS[action].params_doc
        return {ACTIONS[action].key: {p.name: draw(well_typed(p)) for p in decl
                                      if p.required or draw(st.booleans())}}
    if action in ACTIONS and draw(st.booleans()):
        decl = ACTIONS[action].params_doc
        block = {p.name: draw(json_values) for p in decl if draw(st.booleans())}
        if draw(st.booleans()):  # mostly well-typed, with one field made wrong
            block = {p.name: draw(odd_text) if p.type != "integer" else draw(numbers) for p in decl}
        key = ACTIONS[action].key if draw(st.integers(0, 4)) else draw(st.sampled_from(KEYS))
        return {key: block}
    return draw(st.one_of(json_values, st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), json_values,
                                                       max_size=3)))


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    action = draw(st.sampled_from(sorted(ACTIONS))) if draw(st.integers(0, 5)) else draw(odd_text)
    spec: dict[str, Any] = {"action": action}
    if draw(st.integers(0, 9)):
        spec["parameters"] = draw(parameters(action))
    for f in draw(st.lists(st.sampled_from(SPEC_FIELDS), max_size=3, unique=True)):
        spec[f] = draw(scalars if draw(st.booleans()) else st.sampled_from([True, False, 0, 3, 9, "5m", "1h"]))
    if draw(st.integers(0, 19)) == 0:
        spec[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    name = (draw(odd_text) if draw(st.integers(0, 9)) == 0 else f"fz-{uuid.uuid4().hex[:10]}")
    body: Any = {"apiVersion": "kubernetesexecution.kubernaut.io/v1alpha1", "kind": "KubernetesExecution",
                 "metadata": {"name": name}, "spec": spec}
    if draw(st.integers(0, 29)) == 0:
        body = dict(body, spec=draw(json_values))  # not even an object
    return body


def test_fuzzed_specs_through_the_api(rel: Reliability) -> None:
    n = size(300, 10_000)
    t0 = time.monotonic()
    k = rel.k
    namespaces = [rel.ns(f"fuzz{i}") for i in range(4)]
    valid = rel.configmaps(size(6, 40), "fuzzok")
    port = free_port()
    ident = f"rel-fuzz-{uuid.uuid4().hex[:4]}"
    (proc,) = k.replace_controllers((ident, ("--no-leader-elect",), port))
    outcomes = {"rejected": 0, "created": 0, "server_error": 0}
    errors: list[str] = []
    created: dict[str, list[str]] = {ns: [] for ns in namespaces}
    valid_names: dict[str, list[str]] = {}
    count = [0]

    @settings(max_examples=n, deadline=None, database=None, derandomize=not LONG, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(body=specs())
    def post(body: dict[str, Any]) -> None:
        i = count[0]
        count[0] += 1
        ns = namespaces[i % len(namespaces)]
        if i % max(1, n // len(valid)) == 0 and len(valid_names.get("_", [])) < len(valid):
            vns, cm = valid[len(valid_names.setdefault("_", []))]
            valid_names["_"].append(f"{vns}/{rel.update_configmap(vns, cm, 'fuzzed-meanwhile')}")
        body = json.loads(json.dumps(body).replace(OWN_NS, ns))
        try:
            code, answer = k.try_api("POST", f"{GROUP_PATH}/namespaces/{ns}/kubernetesexecutions", body, timeout=30)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if len(json.dumps(body).encode()) > MAX_BODY:  # the API server drops an oversized request
                outcomes["rejected"] += 1
                return
            outcomes["server_error"] += 1
            errors.append(f"{exc!r}: {json.dumps(body)[:200]}")
            return
        if code == 200:
            outcomes["created"] += 1
            created[ns].append(answer["metadata"]["name"])
        elif 400 <= code < 500:
            outcomes["rejected"] += 1
        else:
            outcomes["server_error"] += 1
            errors.append(f"{code} {str(answer)[:300]}: {json.dumps(body)[:200]}")

    post()
    seen = rel.wait_terminal(created, timeout=size(240, 1800))
    settled = [o for o in seen.values() if (o.get("status") or {}).get("phase") in
               ("Failed", "Completed", "RollbackReady", "WaitingApproval") and (o.get("status") or {}).get("reason")]
    unsettled = [f"{o['metadata']['name']}: {o.get('status')}" for o in seen.values() if o not in settled]
    unsettled += [f"{ns}/{nm}: never seen" for ns, ns_names in created.items() for nm in ns_names
                  if (ns, nm) not in seen]
    by_phase: dict[str, int] = {}
    for o in settled:
        by_phase[o["status"]["phase"]] = by_phase.get(o["status"]["phase"], 0) + 1
    transitions, audit_lost, audit_extra = rel.audit_compare([o for o in seen.values() if o.get("status")])
    vwant: dict[str, list[str]] = {}
    for item in valid_names.get("_", []):
        vns, vname = item.split("/")
        vwant.setdefault(vns, []).append(vname)
    vseen = rel.wait_terminal(vwant, timeout=120)
    valid_done = sum((o.get("status") or {}).get("phase") == "Completed" for o in vseen.values())
    alive = proc.poll() is None
    log = k.controller_log(ident)
    tracebacks = log.count("Traceback")
    dup = sum(c - 1 for ns in namespaces for c in rel.jobs_by_execution(ns).values() if c > 1)
    tried = count[0]
    record("fuzz_api", tried, outcomes["rejected"] + len(settled),
           len(unsettled) + outcomes["server_error"] + audit_lost, dup + audit_extra, time.monotonic() - t0,
           audit_lost=audit_lost, audit_extra=audit_extra, **outcomes,
           **{f"ended_{p}": c for p, c in sorted(by_phase.items())},
           valid=len(valid_names.get("_", [])), valid_completed=valid_done, tracebacks=tracebacks,
           controller_alive=alive)
    assert tried >= n * 0.95, tried  # hypothesis generated (about) what was asked
    assert outcomes["created"] > 0 and outcomes["rejected"] > 0, outcomes
    assert not errors, errors[:5]
    assert not unsettled, unsettled[:5]
    assert alive, "the controller crashed"
    assert tracebacks == 0 and " ERROR " not in log, [ln for ln in log.splitlines() if "Traceback" in ln
                                                     or " ERROR " in ln][:10]
    assert valid_done == len(valid_names.get("_", [])) > 0, vseen
    assert dup == 0
    assert audit_lost == 0 and audit_extra == 0, (transitions, audit_lost, audit_extra)


def test_a_nul_character_in_a_spec_is_audited(rel: Reliability) -> None:
    """The API server accepts U+0000 in strings (JSON allows it); PostgreSQL's jsonb and text
    do not. An execution carrying one must still reach the audit store, not poison it (found
    by the long fuzz run: such records were re-sent forever and kept the gauge above 0)."""
    t0 = time.monotonic()
    k = rel.k
    port = free_port()
    k.replace_controllers(("rel-nul", ("--no-leader-elect",), port))
    ns = rel.ns("nul")
    names = [k.create(ns, "update_configmap", {"namespace": ns, "configMap": "absent", "data": {"k": "a\x00b"}}),
             k.create(ns, "scale_deployment", {"namespace": ns, "deployment": "absent", "replicas": 1},
                      approvedBy="x\x00y")]
    seen = rel.wait_terminal({ns: names}, timeout=60)
    objs = [o for o in seen.values() if o.get("status")]
    transitions, audit_lost, audit_extra = rel.audit_compare(objs, wait_s=30)
    record("nul_in_spec_audited", len(names), len(names) if audit_lost == 0 else 0, audit_lost, audit_extra,
           time.monotonic() - t0, transitions=transitions)
    assert len(objs) == len(names) and all(o["status"]["phase"] == "Failed" for o in objs), seen
    assert audit_lost == 0 and audit_extra == 0, (transitions, audit_lost, audit_extra)
