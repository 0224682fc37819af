"""deploy/ is generated from the models and stays in step with them.

The CRD schema comes from the pydantic models (per-action parameter models generated
from the domain's Param data), the RBAC from the domain's per-action rules. These tests
fail when a checked-in file is stale, when RBAC grows wildcards or escalation paths, and
when an example stops validating.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from kexec.adapters.kubernetes.crd import (
    PRESERVE,
    crd_manifest,
    parameters_model,
    structural_problems,
    structural_schema,
    validate_manifest,
)
from kexec.adapters.kubernetes.manifests import REGENERATE, generated_files
from kexec.adapters.kubernetes.rbac import (
    CONTROLLER_NAME,
    CONTROLLER_NAMESPACE,
    CONTROLLER_SERVICE_ACCOUNT,
    action_role_name,
    action_service_account,
)
from kexec.domain.actions import ACTIONS, Action, Param
from kexec.domain.errors import ValidationError
from kexec.domain.execution import GROUP, KIND, PLURAL, VERSION
from kexec.domain.phases import Phase
from kexec.domain.resources import Rule
from kexec.domain.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))
INVALID = DEPLOY / "examples" / "invalid" / "scale-too-many.yaml"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def rbac_docs() -> list[dict[str, Any]]:
    return [
        *load_all(DEPLOY / "base" / "rbac" / "actions.yaml"),
        *load_all(DEPLOY / "base" / "rbac" / "controller.yaml"),
    ]


def by_kind_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


# --- staleness ----------------------------------------------------------------------------


@pytest.mark.parametrize("rel", sorted(generated_files()))
def test_checked_in_file_is_up_to_date(rel: str) -> None:
    path = ROOT / rel
    assert path.exists(), f"{rel} is missing: run `{REGENERATE}`"
    assert path.read_text() == generated_files()[rel], (
        f"{rel} is stale (the models or the domain's actions changed): run `{REGENERATE}`"
    )


def test_generation_is_deterministic() -> None:
    assert generated_files() == generated_files()


def test_generator_script_check_mode_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    script = ROOT / "hack" / "generate-deploy.py"
    spec = importlib.util.spec_from_file_location("generate_deploy", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, capsys.readouterr().err


# --- the CRD ------------------------------------------------------------------------------


def test_crd_identity_and_printer_columns() -> None:
    (crd,) = load_all(DEPLOY / "base" / "crd.yaml")
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == KIND and spec["names"]["plural"] == PLURAL
    assert spec["names"]["shortNames"] == ["kexec"]
    assert spec["names"]["categories"] == ["kubernaut"]
    (version,) = spec["versions"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns)[:5] == ["Action", "Target", "Phase", "Reason", "Age"]
    assert columns["Action"] == ".spec.action"
    assert columns["Target"] == ".status.target"
    assert columns["Phase"] == ".status.phase"
    assert columns["Reason"] == ".status.reason"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_crd_schema_is_structural() -> None:
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert structural_problems(schema) == []
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "anyOf" not in text and "title:" not in text
    assert "additionalProperties: false" not in text


def test_structural_check_catches_violations() -> None:
    """The checker the generator relies on is not vacuous."""
    bad = {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "string"}]},
            "b": {"description": "untyped"},
            "c": {"$ref": "#/x", "title": "C"},
        },
    }
    problems = structural_problems(bad)
    assert any(".a: has anyOf" in p for p in problems)
    assert any(".b: no type" in p for p in problems)
    assert any(".c: has $ref" in p for p in problems)


def _spec_schema() -> dict[str, Any]:
    return crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_spec_schema_follows_the_design() -> None:
    spec = _spec_schema()
    props = spec["properties"]
    assert spec["required"] == ["action", "parameters"]
    assert props["action"]["enum"] == list(ACTIONS)
    params = props["parameters"]
    assert params["minProperties"] == 1 and params["maxProperties"] == 1
    assert list(params["properties"]) == [a.key for a in ACTIONS.values()]
    assert props["maxRetries"] == {
        "type": "integer",
        "description": "Job backoffLimit.",
        "default": 2,
        "minimum": 0,
        "maximum": 5,
    }
    assert props["stepNumber"]["minimum"] == 1
    assert props["dryRun"]["default"] is False
    assert props["timeout"]["pattern"] == r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
    assert "duration('15m')" in props["timeout"]["x-kubernetes-validations"][0]["rule"]
    assert set(props["workflowExecutionRef"]["properties"]) == {"name", "namespace"}
    for field in ("targetCluster", "approvalReceived", "approvedBy", "rollbackOf"):
        assert field in props
    # The CEL rule pairs every action with its key.
    rule, immutable = spec["x-kubernetes-validations"]
    for action in ACTIONS.values():
        pair = f"(self.action == '{action.name}' && has(self.parameters.{action.key}))"
        assert pair in rule["rule"]
    # ... and every spec field but the approval fields is pinned at creation.
    from kexec.adapters.kubernetes.crd.cel import PINNED_FIELDS
    from kexec.domain.spec import APPROVAL_FIELDS

    assert set(PINNED_FIELDS) | set(APPROVAL_FIELDS) == set(props)
    assert not set(PINNED_FIELDS) & set(APPROVAL_FIELDS)
    for field in PINNED_FIELDS:
        assert f"self.{field} == oldSelf.{field}" in immutable["rule"]


def test_status_schema_is_typed_and_open() -> None:
    root = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status = root["properties"]["status"]
    assert status[PRESERVE] is True  # a new status field is never silently pruned
    props = status["properties"]
    assert props["phase"]["enum"] == [p.value for p in Phase]
    for field in (
        "reason",
        "message",
        "target",
        "observedGeneration",
        "conditions",
        "validation",
        "execution",
        "postconditions",
        "rollback",
        "phaseTransitions",
    ):
        assert field in props, field
    cond = props["conditions"]
    assert cond["x-kubernetes-list-type"] == "map"
    assert cond["items"]["required"] == ["type", "status"]


@pytest.mark.parametrize("action", list(ACTIONS.values()), ids=list(ACTIONS))
def test_parameter_schema_is_generated_from_params_doc(action: Action[Any]) -> None:
    schema = _spec_schema()["properties"]["parameters"]["properties"][action.key]
    assert list(schema["properties"]) == [p.name for p in action.params_doc]
    assert schema.get("required", []) == [p.name for p in action.params_doc if p.required]
    for p in action.params_doc:
        prop = schema["properties"][p.name]
        if p.type == "integer":
            assert (prop["type"], prop.get("minimum"), prop.get("maximum")) == (
                "integer",
                p.minimum,
                p.maximum,
            )
        if p.type == "label":
            assert prop["maxLength"] == 63


class _EveryType(Action[Any]):
    """A would-be 12th action using every Param type: no CRD code needs to change."""

    name = "every_type"
    key = "everyType"
    description = "test"
    default_timeout_seconds = 60
    rules: ClassVar[tuple[Rule, ...]] = ()
    params_doc = (
        Param("namespace", "label"),
        Param("thing", "name"),
        Param("count", "integer", minimum=1, maximum=9),
        Param("flag", "boolean", required=False, default=True),
        Param("mode", "enum", enum=("a", "b")),
        Param("blob", "object"),
        Param("patch", "patch"),
        Param("data", "stringmap"),
        Param("ref", "ref"),
        Param("optional", "integer", required=False, minimum=0, maximum=5),
    )

    def _parse(self, f: Any) -> Any: ...
    def to_dict(self, params: Any) -> dict[str, Any]:
        return {}

    def target(self, params: Any) -> Any: ...
    def plan(self, params: Any, snap: Any, ctx: Any) -> list[Any]:
        return []

    def postconditions(self, params: Any, snap: Any, result: Any) -> list[Any]:
        return []

    def rollback(self, params: Any, before: Any, ctx: Any) -> Any: ...


def test_every_param_type_maps_to_a_structural_schema() -> None:
    model = parameters_model(_EveryType())
    schema = structural_schema(model)
    p = schema["properties"]
    assert p["namespace"]["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert p["namespace"]["maxLength"] == 63
    assert p["thing"]["maxLength"] == 253
    assert (p["count"]["minimum"], p["count"]["maximum"]) == (1, 9)
    assert p["flag"] == {"type": "boolean", "default": True}
    assert p["mode"] == {"type": "string", "enum": ["a", "b"]}
    assert p["blob"] == {"type": "object", PRESERVE: True}
    assert p["patch"] == {PRESERVE: True}  # object or array: untyped + preserve is structural
    assert p["data"] == {
        "type": "object",
        "additionalProperties": {"type": "string", "nullable": True},
    }
    assert p["ref"]["required"] == ["name"]
    assert "nullable" not in p["optional"] and "default" not in p["optional"]
    assert schema["required"] == [
        "namespace",
        "thing",
        "count",
        "mode",
        "blob",
        "patch",
        "data",
        "ref",
    ]
    ok = {
        "namespace": "ns",
        "thing": "a.b",
        "count": 3,
        "mode": "a",
        "blob": {"x": 1},
        "patch": [{"op": "remove", "path": "/x"}],
        "data": {"k": None},
        "ref": {"name": "s"},
    }
    model.model_validate(ok)
    with pytest.raises(Exception, match="patch"):
        model.model_validate({**ok, "patch": "nope"})


# --- validate_manifest ---------------------------------------------------------------------


def _doc(**spec: Any) -> dict[str, Any]:
    base = {
        "action": "scale_deployment",
        "parameters": {
            "scaleDeployment": {"namespace": "demo", "deployment": "web", "replicas": 3}
        },
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": "x", "namespace": "demo"},
        "spec": {**base, **spec},
    }


def test_validate_manifest_accepts_a_good_document() -> None:
    assert validate_manifest(_doc()) == []


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"maxRetries": 9}, "spec.maxRetries"),
        ({"action": "reboot_everything"}, "spec.action"),
        ({"parameters": {"cordonNode": {"node": "n1"}}}, "spec.parameters"),
        (
            {
                "parameters": {
                    "scaleDeployment": {"namespace": "demo", "deployment": "web", "replicas": 1},
                    "cordonNode": {"node": "n1"},
                }
            },
            "spec.parameters",
        ),
        ({"timeout": "20m"}, "spec.timeout"),
        ({"timeout": "soon"}, "spec.timeout"),
        ({"stepNumber": 0}, "spec.stepNumber"),
        ({"dryRun": "yes"}, "spec.dryRun"),
        ({"surprise": 1}, "spec.surprise"),
        (
            {
                "parameters": {
                    "scaleDeployment": {"namespace": "Demo", "deployment": "web", "replicas": 1}
                }
            },
            "spec.parameters.scaleDeployment.namespace",
        ),
        (
            {
                "parameters": {
                    "scaleDeployment": {"namespace": "demo", "deployment": "web", "replicas": "3"}
                }
            },
            "spec.parameters.scaleDeployment.replicas",
        ),
    ],
)
def test_validate_manifest_names_the_bad_field(spec: dict[str, Any], path: str) -> None:
    errors = validate_manifest(_doc(**spec))
    assert any(e.startswith(f"{path}:") for e in errors), errors


def test_validate_manifest_checks_the_envelope() -> None:
    doc = _doc()
    doc["kind"] = "Pod"
    del doc["metadata"]["name"]
    errors = validate_manifest(doc)
    assert any(e.startswith("kind:") for e in errors), errors
    assert any(e.startswith("metadata:") for e in errors), errors
    assert validate_manifest([]) != []


# --- examples --------------------------------------------------------------------------------


def test_there_is_one_example_per_action() -> None:
    actions = sorted(load_all(p)[0]["spec"]["action"] for p in EXAMPLES)
    assert actions == sorted(ACTIONS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid_for_schema_and_domain(path: Path) -> None:
    (doc,) = load_all(path)
    assert validate_manifest(doc) == []
    spec, action, _ = parse_spec(doc["spec"])
    assert path.stem == action.name.replace("_", "-")
    # Node actions are accepted only from the trusted namespace.
    if action.node_action:
        assert doc["metadata"]["namespace"] == CONTROLLER_NAMESPACE
    else:
        # An execution acts on its own namespace (safety default).
        own = doc["metadata"]["namespace"]
        assert spec.parameters.get("namespace", own) == own


def test_invalid_example_fails_naming_replicas() -> None:
    (doc,) = load_all(INVALID)
    field = "spec.parameters.scaleDeployment.replicas"
    errors = validate_manifest(doc)
    assert any(e.startswith(f"{field}:") for e in errors), errors
    with pytest.raises(ValidationError) as exc:
        parse_spec(doc["spec"])
    assert field in [e.path for e in exc.value.errors]


# --- RBAC --------------------------------------------------------------------------------------


def test_one_cluster_role_per_action_from_its_rules() -> None:
    roles = [d for d in load_all(DEPLOY / "base" / "rbac" / "actions.yaml") if d["kind"] == "ClusterRole"]
    assert len(roles) == len(ACTIONS) == 11
    for action in ACTIONS.values():
        role = by_kind_name(roles, "ClusterRole", action_role_name(action.name))
        assert role["rules"] == [r.to_k8s() for r in action.rules]
        assert role["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kexec"
    assert action_role_name("scale_deployment") == "kexec-action-scale-deployment"
    assert action_service_account("scale_deployment") == "kexec-scale-deployment"


def test_no_wildcards_anywhere() -> None:
    for doc in rbac_docs():
        for rule in doc.get("rules", []):
            for key in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                values = rule.get(key, [])
                assert not any("*" in v for v in values), (doc["metadata"]["name"], key, values)


def _controller_rules() -> list[dict[str, Any]]:
    docs = rbac_docs()
    return (
        by_kind_name(docs, "ClusterRole", CONTROLLER_NAME)["rules"]
        + by_kind_name(docs, "Role", CONTROLLER_NAME)["rules"]
    )


def test_controller_binds_only_the_action_roles() -> None:
    rules = [r for r in _controller_rules() if "bind" in r["verbs"]]
    assert len(rules) == 1
    (rule,) = rules
    assert rule["verbs"] == ["bind"] and rule["resources"] == ["clusterroles"]
    assert rule["resourceNames"] == [action_role_name(a) for a in ACTIONS]
    assert not any("escalate" in r["verbs"] for r in _controller_rules())
    # It can create bindings but cannot write roles.
    assert not any(
        {"roles", "clusterroles"} & set(r["resources"]) and set(r["verbs"]) - {"bind"}
        for r in _controller_rules()
    )


def test_controller_impersonates_only_the_action_service_accounts() -> None:
    rules = [r for r in _controller_rules() if "impersonate" in r["verbs"]]
    assert len(rules) == 1
    (rule,) = rules
    assert rule["verbs"] == ["impersonate"] and rule["resources"] == ["serviceaccounts"]
    assert rule["apiGroups"] == [""]
    assert rule["resourceNames"] == [action_service_account(a) for a in ACTIONS]


def test_controller_never_reads_secrets_or_touches_targets() -> None:
    """Target reads and dry runs happen AS the action's ServiceAccount."""
    for rule in _controller_rules():
        assert "secrets" not in rule["resources"]
        assert "deployments" not in rule["resources"]
        if "configmaps" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_configmaps_and_leases_only_in_the_controller_namespace() -> None:
    docs = rbac_docs()
    role = by_kind_name(docs, "Role", CONTROLLER_NAME)
    assert role["metadata"]["namespace"] == CONTROLLER_NAMESPACE
    resources = {res for r in role["rules"] for res in r["resources"]}
    assert resources == {"configmaps", "leases"}
    cluster_role = by_kind_name(docs, "ClusterRole", CONTROLLER_NAME)
    assert not any({"configmaps", "leases"} & set(r["resources"]) for r in cluster_role["rules"])


def test_bindings_name_the_controller_service_account() -> None:
    docs = rbac_docs()
    subject = {"kind": "ServiceAccount", "name": CONTROLLER_SERVICE_ACCOUNT, "namespace": CONTROLLER_NAMESPACE}
    crb = by_kind_name(docs, "ClusterRoleBinding", CONTROLLER_NAME)
    rb = by_kind_name(docs, "RoleBinding", CONTROLLER_NAME)
    assert crb["subjects"] == [subject] and crb["roleRef"]["name"] == CONTROLLER_NAME
    assert rb["subjects"] == [subject] and rb["metadata"]["namespace"] == CONTROLLER_NAMESPACE
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": CONTROLLER_NAME,
    }


# --- hand-written deploy files ------------------------------------------------------------------


def test_controller_deployment() -> None:
    docs = load_all(DEPLOY / "base" / "controller.yaml")
    by_kind_name(docs, "Namespace", CONTROLLER_NAMESPACE)
    by_kind_name(docs, "ServiceAccount", CONTROLLER_SERVICE_ACCOUNT)
    dep = by_kind_name(docs, "Deployment", CONTROLLER_NAME)
    assert dep["metadata"]["namespace"] == CONTROLLER_NAMESPACE
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == CONTROLLER_SERVICE_ACCOUNT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8080
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_kustomization_lists_every_manifest() -> None:
    assert yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"] == ["base"]
    kust = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    resources = kust["resources"]
    assert {"crd.yaml", "controller.yaml", "rbac/actions.yaml", "rbac/controller.yaml"} <= set(
        resources
    )
    for rel in resources:
        assert (DEPLOY / "base" / rel).is_file(), rel


def test_dockerfile_runs_kexec_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["kexec"\]$', text, re.M)
    # The runner Jobs use the same image and uid.
    assert users[-1].split(":")[0] == "65532"
