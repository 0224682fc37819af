"""The KubernetesExecution CRD, generated from the wire models (one source of truth).

* ``parameters``: the per-action parameter models, generated from the domain's ``Param``
  data (``Action.params_doc``), so a 12th action needs no change here;
* ``models``: spec, status and the whole object; they also check a document
  client-side (:func:`validate_manifest`, ``kexec validate``);
* ``cel``: the rules the apiserver enforces itself (``x-kubernetes-validations``);
* ``structural``: pydantic's JSON Schema → a Kubernetes structural schema;
* this module: names, printer columns and the CustomResourceDefinition itself.
"""

from __future__ import annotations

from typing import Any

from kexec.adapters.kubernetes.crd.models import (
    ExecutionSpecModel,
    ExecutionStatusModel,
    validate_manifest,
)
from kexec.adapters.kubernetes.crd.parameters import parameters_model
from kexec.adapters.kubernetes.crd.structural import (
    PRESERVE,
    structural_problems,
    structural_schema,
)
from kexec.domain.execution import GROUP, KIND, PLURAL, VERSION

CRD_NAME = f"{PLURAL}.{GROUP}"
SINGULAR = KIND.lower()
SHORT_NAMES = ("kexec",)
CATEGORIES = ("kubernaut",)

PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Action", "type": "string", "jsonPath": ".spec.action"},
    {"name": "Target", "type": "string", "jsonPath": ".status.target"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
)


def openapi_schema() -> dict[str, Any]:
    """The version's openAPIV3Schema (root object; metadata is the apiserver's)."""
    spec = structural_schema(ExecutionSpecModel)
    status = structural_schema(ExecutionStatusModel)
    return {
        "type": "object",
        "description": "KubernetesExecution executes one remediation action safely: validate "
        "(parameters, target, policy, server-side dry run), optionally wait for approval, run "
        "in a Job under a least-privilege ServiceAccount, verify, and offer a rollback.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd_manifest() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of KubernetesExecution."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kexec", "app.kubernetes.io/part-of": "kexec"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "selectableFields": [{"jsonPath": ".spec.action"}],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


__all__ = [
    "CRD_NAME",
    "PRESERVE",
    "PRINTER_COLUMNS",
    "crd_manifest",
    "openapi_schema",
    "parameters_model",
    "structural_problems",
    "structural_schema",
    "validate_manifest",
]
