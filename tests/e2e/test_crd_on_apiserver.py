"""The generated CRD and RBAC on a REAL kube-apiserver.

* deploy/base/crd.yaml is accepted (structural, CEL compiles) and becomes Established;
* every example is accepted; the apiserver ITSELF rejects (422) out-of-range and
  mismatched specs (we never rely on the controller for these);
* printer columns, short name and the status subresource behave like `kubectl` expects;
* deploy/base/rbac/*.yaml is accepted, and the controller ServiceAccount may bind only the
  per-action ClusterRoles and impersonate only the per-action ServiceAccounts, proven
  with SubjectAccessReviews AND with real requests made with the controller's own token.

Needs the session fixture ``control_plane`` (tests/support/plugin.py). It FAILS, never
skips, when the control plane cannot start.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException

from devstack.controlplane import ControlPlane
from kexec.adapters.kubernetes.crd import CRD_NAME, PRINTER_COLUMNS
from kexec.adapters.kubernetes.rbac import (
    CONTROLLER_NAMESPACE,
    CONTROLLER_SERVICE_ACCOUNT,
    action_role_name,
    action_service_account,
)
from kexec.domain.actions import ACTIONS
from kexec.domain.execution import GROUP, PLURAL, VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))
FIELD_MANAGER = "kexec-e2e"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


async def call(
    api: ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    query: Sequence[tuple[str, Any]] = (),
    headers: dict[str, str] | None = None,
) -> Any:
    """One raw REST call; returns the decoded JSON body, raises ApiException."""
    # kubernetes-asyncio JSON-encodes the body itself, for apply-patch+yaml too (JSON is YAML).
    hdrs = {"Accept": "application/json", "Content-Type": content_type, **(headers or {})}
    return await api.call_api(
        path,
        method,
        query_params=list(query),
        header_params=hdrs,
        body=body,
        response_types_map={200: "object", 201: "object", 202: "object"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _request_timeout=20,
    )


async def status_of(coro: Any) -> int:
    """HTTP status of a call expected to fail (200 if it did not)."""
    try:
        await coro
    except ApiException as exc:
        return int(exc.status)
    return 200


async def rejected(coro: Any) -> tuple[int, str]:
    try:
        await coro
    except ApiException as exc:
        return int(exc.status), str(exc.body)
    return 200, ""


def kexec_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def object_path(doc: dict[str, Any]) -> str:
    """REST path of a (rbac/core) object, for server-side apply."""
    api_version, kind = doc["apiVersion"], doc["kind"]
    meta = doc["metadata"]
    plural = {
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
        "Role": "roles",
        "RoleBinding": "rolebindings",
        "Namespace": "namespaces",
        "ServiceAccount": "serviceaccounts",
        "CustomResourceDefinition": "customresourcedefinitions",
        "ConfigMap": "configmaps",  # kexec-storm-brake (deploy/base/rbac/controller.yaml)
    }[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{base}{ns}/{plural}/{meta['name']}"


async def apply(api: ApiClient, doc: dict[str, Any]) -> Any:
    return await call(
        api,
        "PATCH",
        object_path(doc),
        doc,
        content_type=APPLY,
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
    )


async def eventually(check: Any, what: str, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last={last!r})")


# --- fixtures (one ApiClient per module) -------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(control_plane: ControlPlane) -> AsyncIterator[ApiClient]:
    assert control_plane.kubeconfig is not None, "control plane has no kubeconfig"
    cfg = Configuration()
    await config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=cfg
    )
    async with ApiClient(cfg) as client:
        yield client


async def ensure_namespace(api: ApiClient, name: str) -> None:
    try:
        await call(api, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def namespace(api: ApiClient) -> AsyncIterator[str]:
    """A fresh namespace for this module's objects (no controller acts on it by default)."""
    name = f"crd-e2e-{uuid.uuid4().hex[:6]}"
    await ensure_namespace(api, name)
    yield name
    try:
        await call(api, "DELETE", f"/api/v1/namespaces/{name}")
    except ApiException:
        pass


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def crd(api: ApiClient) -> dict[str, Any]:
    """deploy/base/crd.yaml applied (idempotent: other modules may install it too) and Established."""
    (doc,) = load_all(DEPLOY / "base" / "crd.yaml")
    await apply(api, doc)

    async def established() -> dict[str, Any] | None:
        obj = await call(api, "GET", object_path(doc))
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        bad = conds.get("NonStructuralSchema")
        assert not bad or bad["status"] != "True", f"CRD is not structural: {bad}"
        ok = conds.get("Established", {}).get("status") == "True"
        names = conds.get("NamesAccepted", {}).get("status") == "True"
        return obj if ok and names else None

    obj = await eventually(established, "the CRD to be Established")
    # Discovery needs a moment after Established before the new resource serves.
    await eventually(lambda: _lists(api), "the kubernetesexecutions endpoint to serve")
    return obj


async def _lists(api: ApiClient) -> bool:
    try:
        await call(api, "GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}")
        return True
    except ApiException as exc:
        if exc.status in (404, 429, 503):  # not served yet / "storage is (re)initializing"
            return False
        raise


def example(path: Path, namespace: str, suffix: str = "") -> dict[str, Any]:
    (doc,) = load_all(path)
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = namespace
    if suffix:
        doc["metadata"]["name"] = f"{doc['metadata']['name']}-{suffix}"
    return doc


def scale_doc(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = example(DEPLOY / "examples" / "scale-deployment.yaml", namespace)
    body["metadata"]["name"] = name
    body["spec"].update(spec)
    return body


# --- the CRD ---------------------------------------------------------------------------------


async def test_crd_is_established_with_the_generated_schema(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == CRD_NAME
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert crd["status"]["acceptedNames"]["shortNames"] == ["kexec"]
    assert crd["status"]["acceptedNames"]["categories"] == ["kubernaut"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_every_example_is_accepted(
    api: ApiClient, crd: dict[str, Any], namespace: str, path: Path
) -> None:
    doc = example(path, namespace)
    created = await call(api, "POST", kexec_path(namespace), doc)
    assert created["spec"]["action"] == doc["spec"]["action"]
    # Defaults come from the schema (the models): maxRetries and dryRun always present.
    assert created["spec"]["maxRetries"] == doc["spec"].get("maxRetries", 2)
    assert created["spec"]["dryRun"] == doc["spec"].get("dryRun", False)
    # Nothing was pruned from what the example says (free-form fields kept verbatim).
    key = ACTIONS[doc["spec"]["action"]].key
    for field, value in doc["spec"]["parameters"][key].items():
        assert created["spec"]["parameters"][key][field] == value


async def test_schema_defaults_apply_inside_parameters(
    api: ApiClient, crd: dict[str, Any], namespace: str
) -> None:
    doc = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KubernetesExecution",
        "metadata": {"name": "drain-defaults", "namespace": namespace},
        "spec": {"action": "drain_node", "parameters": {"drainNode": {"node": "n1"}}},
    }
    created = await call(api, "POST", kexec_path(namespace), doc)
    assert created["spec"]["parameters"]["drainNode"] == {
        "node": "n1",
        "ignoreDaemonSets": True,
        "deleteEmptyDirData": False,
        "force": False,
        "uncordonOnFailure": True,
    }


SCALE = {"namespace": "demo", "deployment": "web", "replicas": 1}

# (case, spec overrides, field the error must name, text the error must contain)
BAD_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "replicas-5000",
        {"parameters": {"scaleDeployment": {**SCALE, "replicas": 5000}}},
        "spec.parameters.scaleDeployment.replicas",
        "less than or equal to 1000",
    ),
    (
        "replicas-negative",
        {"parameters": {"scaleDeployment": {**SCALE, "replicas": -1}}},
        "spec.parameters.scaleDeployment.replicas",
        "greater than or equal to 0",
    ),
    ("max-retries-9", {"maxRetries": 9}, "spec.maxRetries", "less than or equal to 5"),
    # CEL (x-kubernetes-validations): the key must be the camelCase action name.
    (
        "key-not-matching-action",
        {"parameters": {"cordonNode": {"node": "n1"}}},
        "spec.parameters",
        "camelCase name of spec.action",
    ),
    (
        "two-keys",
        {"parameters": {"scaleDeployment": SCALE, "cordonNode": {"node": "n1"}}},
        "spec.parameters",
        "at most 1",
    ),
    ("unknown-action", {"action": "reboot_cluster"}, "spec.action", "Unsupported value"),
    ("timeout-over-15m", {"timeout": "20m"}, "spec.timeout", "between 1s and 15m"),
    ("timeout-zero", {"timeout": "0s"}, "spec.timeout", "between 1s and 15m"),
    ("timeout-garbage", {"timeout": "soon"}, "spec.timeout", "should match"),
    (
        "bad-namespace-name",
        {"parameters": {"scaleDeployment": {**SCALE, "namespace": "Not_A_Label"}}},
        "spec.parameters.scaleDeployment.namespace",
        "should match",
    ),
    (
        "missing-replicas",
        {"parameters": {"scaleDeployment": {"namespace": "demo", "deployment": "web"}}},
        "spec.parameters.scaleDeployment.replicas",
        "Required value",
    ),
    ("step-number-0", {"stepNumber": 0}, "spec.stepNumber", "greater than or equal to 1"),
    (
        "patch-not-json-shape",
        {
            "action": "patch_deployment",
            "parameters": {
                "patchDeployment": {
                    "namespace": "demo",
                    "deployment": "web",
                    "patchType": "sideways",
                    "patch": {},
                }
            },
        },
        "spec.parameters.patchDeployment.patchType",
        "Unsupported value",
    ),
]


@pytest.mark.parametrize(
    ("case", "spec", "field", "text"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS]
)
async def test_apiserver_itself_rejects(
    api: ApiClient,
    crd: dict[str, Any],
    namespace: str,
    case: str,
    spec: dict[str, Any],
    field: str,
    text: str,
) -> None:
    doc = scale_doc(namespace, f"bad-{case}", **spec)
    status, body = await rejected(call(api, "POST", kexec_path(namespace), doc))
    assert status == 422, f"{case}: expected 422 Invalid, got {status} {body}"
    message = json.loads(body)["message"]
    assert f"{field}:" in message and text in message, f"{case}: {message}"
    assert "evaluating rule" not in message, f"{case}: a CEL rule errored: {message}"


async def test_the_invalid_example_is_rejected(
    api: ApiClient, crd: dict[str, Any], namespace: str
) -> None:
    doc = example(DEPLOY / "examples" / "invalid" / "scale-too-many.yaml", namespace)
    status, body = await rejected(call(api, "POST", kexec_path(namespace), doc))
    assert status == 422 and "spec.parameters.scaleDeployment.replicas" in body, body


async def test_printer_columns_and_short_name(
    control_plane: ControlPlane, api: ApiClient, crd: dict[str, Any], namespace: str
) -> None:
    (version,) = crd["spec"]["versions"]
    assert version["additionalPrinterColumns"] == [dict(c) for c in PRINTER_COLUMNS]
    await call(api, "POST", kexec_path(namespace), scale_doc(namespace, "columns"))
    # The Table the apiserver serves to `kubectl get` carries our columns.
    table = await call(
        api,
        "GET",
        kexec_path(namespace),
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[:6] == ["Name", "Action", "Target", "Phase", "Reason", "Age"], names
    # And the real kubectl, through the short name.
    out = await asyncio.to_thread(control_plane.kubectl, "get", "kexec", "-n", namespace, "columns")
    header = out.stdout.splitlines()[0].split()
    assert header == ["NAME", "ACTION", "TARGET", "PHASE", "REASON", "AGE"], out.stdout
    assert "scale_deployment" in out.stdout.splitlines()[1]


async def test_status_subresource(
    control_plane: ControlPlane, api: ApiClient, crd: dict[str, Any], namespace: str
) -> None:
    name = "status-sub"
    created = await call(api, "POST", kexec_path(namespace), scale_doc(namespace, name))
    assert "status" not in created or not created["status"]
    status = {
        "phase": "Completed",
        "reason": "Completed",
        "message": "done",
        "target": f"Deployment/{namespace}/web",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Validated",
                "status": "True",
                "reason": "Validated",
                "message": "",
                "lastTransitionTime": "2030-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "validation": {"policy": {"allowed": True, "violations": []}},
        "execution": {"jobName": "j", "attempts": 1},
        "postconditions": [{"name": "ReplicasSet", "passed": True, "message": ""}],
        "rollback": {
            "available": True,
            "action": "scale_deployment",
            "parameters": {"namespace": namespace, "deployment": "web", "replicas": 1},
        },
        "phaseTransitions": [{"phase": "Pending", "time": "2030-01-01T00:00:00Z"}],
        "someFutureField": {"kept": True},
    }
    # Replaced whole (JSON patch), not merged: the e2e session's controller may have written
    # a status of its own since the create (it reconciles every namespace).
    updated = await call(
        api, "PATCH", kexec_path(namespace, name, "status"),
        [{"op": "add", "path": "/status", "value": status}], content_type=JSON_PATCH,
    )
    assert updated["status"] == status  # typed fields valid, open fields kept verbatim
    assert updated["metadata"]["generation"] == created["metadata"]["generation"]
    # Status written through the main resource is ignored (it is a subresource).
    main = await call(
        api,
        "PATCH",
        kexec_path(namespace, name),
        {"status": {"phase": "Failed"}},
        content_type=MERGE,
    )
    assert main["status"]["phase"] == "Completed"
    # ... and spec written through /status is ignored.
    via_status = await call(
        api,
        "PATCH",
        kexec_path(namespace, name, "status"),
        {"spec": {"maxRetries": 5}},
        content_type=MERGE,
    )
    assert via_status["spec"]["maxRetries"] == 2
    # The phase enum is enforced on status too.
    code, body = await rejected(
        call(
            api,
            "PATCH",
            kexec_path(namespace, name, "status"),
            {"status": {"phase": "Exploded"}},
            content_type=MERGE,
        )
    )
    assert code == 422 and "status.phase" in body, body
    out = await asyncio.to_thread(control_plane.kubectl, "get", "kexec", "-n", namespace, name)
    row = out.stdout.splitlines()[1].split()
    assert row[1:5] == [
        "scale_deployment",
        f"Deployment/{namespace}/web",
        "Completed",
        "Completed",
    ], out.stdout


# --- RBAC ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rbac(api: ApiClient, crd: dict[str, Any]) -> list[dict[str, Any]]:
    """deploy/base/rbac/*.yaml applied server-side, plus the controller's Namespace and SA."""
    controller_docs = load_all(DEPLOY / "base" / "controller.yaml")
    for doc in controller_docs:
        if doc["kind"] in ("Namespace", "ServiceAccount"):
            await apply(api, doc)
    docs = [
        *load_all(DEPLOY / "base" / "rbac" / "actions.yaml"),
        *load_all(DEPLOY / "base" / "rbac" / "controller.yaml"),
    ]
    applied = [await apply(api, doc) for doc in docs]
    return applied


async def test_rbac_manifests_are_accepted(rbac: list[dict[str, Any]]) -> None:
    kinds = [d["kind"] for d in rbac]
    assert kinds.count("ClusterRole") >= len(ACTIONS) + 1
    names = {d["metadata"]["name"] for d in rbac if d["kind"] == "ClusterRole"}
    assert {action_role_name(a) for a in ACTIONS} <= names
    # The apiserver stored the rules exactly (no wildcard crept in by defaulting).
    for doc in rbac:
        for rule in doc.get("rules") or []:
            assert "*" not in rule.get("verbs", []) and "*" not in rule.get("resources", [])


async def test_whole_kustomization_server_side_dry_run(
    control_plane: ControlPlane, rbac: list[dict[str, Any]]
) -> None:
    """deploy/ (kustomize) is accepted as a whole, with no PodSecurity (restricted) warnings."""
    out = await asyncio.to_thread(
        control_plane.kubectl,
        "apply",
        "--server-side",
        "--dry-run=server",
        f"--field-manager={FIELD_MANAGER}",
        "--force-conflicts",
        "-k",
        str(DEPLOY),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "deployment.apps/kexec-controller serverside-applied" in out.stdout
    assert "Warning" not in out.stderr, out.stderr
    # The PodSecurity check is live: a privileged pod template would be flagged.
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "psa-probe", "namespace": CONTROLLER_NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "x", "securityContext": {"privileged": True}}
                    ]
                },
            },
        },
    }
    probe = await asyncio.to_thread(
        control_plane.kubectl,
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(bad),
        check=False,
    )
    assert "PodSecurity" in probe.stderr, (probe.stdout, probe.stderr)


CONTROLLER_USER = f"system:serviceaccount:{CONTROLLER_NAMESPACE}:{CONTROLLER_SERVICE_ACCOUNT}"


async def can(
    api: ApiClient,
    verb: str,
    resource: str,
    *,
    group: str = "",
    name: str = "",
    namespace: str = "",
    subresource: str = "",
) -> bool:
    attrs = {"verb": verb, "resource": resource, "group": group}
    if name:
        attrs["name"] = name
    if namespace:
        attrs["namespace"] = namespace
    if subresource:
        attrs["subresource"] = subresource
    sar = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": CONTROLLER_USER,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{CONTROLLER_NAMESPACE}",
                "system:authenticated",
            ],
            "resourceAttributes": attrs,
        },
    }
    out = await call(api, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar)
    return bool(out["status"].get("allowed"))


RBAC = "rbac.authorization.k8s.io"


async def test_subject_access_reviews(api: ApiClient, rbac: list[dict[str, Any]]) -> None:
    # bind: only the per-action ClusterRoles.
    assert await can(api, "bind", "clusterroles", group=RBAC, name="kexec-action-scale-deployment")
    for action in ACTIONS:
        assert await can(api, "bind", "clusterroles", group=RBAC, name=action_role_name(action))
    assert not await can(api, "bind", "clusterroles", group=RBAC, name="cluster-admin")
    assert not await can(api, "bind", "clusterroles", group=RBAC, name="edit")
    assert not await can(api, "escalate", "clusterroles", group=RBAC, name="cluster-admin")
    # impersonate: only the per-action ServiceAccounts.
    assert await can(
        api, "impersonate", "serviceaccounts", name="kexec-scale-deployment", namespace="demo"
    )
    assert not await can(api, "impersonate", "serviceaccounts", name="default", namespace="demo")
    assert not await can(
        api, "impersonate", "serviceaccounts", name=CONTROLLER_SERVICE_ACCOUNT, namespace=CONTROLLER_NAMESPACE
    )
    assert not await can(api, "impersonate", "users", name="system:admin")
    assert not await can(api, "impersonate", "groups", name="system:masters")
    # Its own object and children.
    assert await can(api, "update", PLURAL, group=GROUP, namespace="demo", subresource="status")
    assert await can(api, "create", "jobs", group="batch", namespace="demo")
    # Least privilege: no secrets, no targets, config only in its own namespace.
    assert not await can(api, "get", "secrets", namespace="demo")
    assert not await can(api, "patch", "deployments", group="apps", namespace="demo")
    assert not await can(api, "create", PLURAL, group=GROUP, namespace="demo")
    assert await can(api, "get", "configmaps", namespace=CONTROLLER_NAMESPACE)
    assert not await can(api, "get", "configmaps", namespace="demo")
    assert await can(
        api, "update", "leases", group="coordination.k8s.io", namespace=CONTROLLER_NAMESPACE
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def controller_api(
    control_plane: ControlPlane, api: ApiClient, rbac: list[dict[str, Any]]
) -> AsyncIterator[ApiClient]:
    """An ApiClient authenticated with a real token of the controller's ServiceAccount."""
    req = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600},
    }
    out = await call(
        api,
        "POST",
        f"/api/v1/namespaces/{CONTROLLER_NAMESPACE}/serviceaccounts/{CONTROLLER_SERVICE_ACCOUNT}/token",
        req,
    )
    cfg = Configuration(host=control_plane.server)
    cfg.ssl_ca_cert = str(control_plane.ca_file)
    cfg.api_key = {"BearerToken": out["status"]["token"]}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    async with ApiClient(cfg) as client:
        yield client


async def test_controller_token_can_bind_only_action_roles(
    api: ApiClient, controller_api: ApiClient, namespace: str
) -> None:
    sa = action_service_account("scale_deployment")

    def binding(name: str, role: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        }

    path = f"/apis/{RBAC}/v1/namespaces/{namespace}/rolebindings"
    ok = await call(
        controller_api, "POST", path, binding("ok", action_role_name("scale_deployment"))
    )
    assert ok["roleRef"]["name"] == "kexec-action-scale-deployment"
    # RBAC escalation prevention: without `bind` on cluster-admin the apiserver refuses.
    assert (
        await status_of(call(controller_api, "POST", path, binding("escalate", "cluster-admin")))
        == 403
    )
    assert await status_of(call(controller_api, "POST", path, binding("edit", "edit"))) == 403


async def test_controller_token_can_impersonate_only_action_service_accounts(
    api: ApiClient, controller_api: ApiClient, namespace: str
) -> None:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    me = await call(controller_api, "POST", path, review)
    assert me["status"]["userInfo"]["username"] == CONTROLLER_USER
    as_action = f"system:serviceaccount:{namespace}:{action_service_account('scale_deployment')}"
    who = await call(controller_api, "POST", path, review, headers={"Impersonate-User": as_action})
    assert who["status"]["userInfo"]["username"] == as_action
    for other in (
        f"system:serviceaccount:{namespace}:default",
        f"system:serviceaccount:kube-system:{action_service_account('drain_node')}x",
        "system:admin",
    ):
        code = await status_of(
            call(controller_api, "POST", path, review, headers={"Impersonate-User": other})
        )
        assert code == 403, f"impersonating {other} should be forbidden, got {code}"
