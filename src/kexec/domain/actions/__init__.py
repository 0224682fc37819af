"""The registry of actions: one line per action."""

from __future__ import annotations

from typing import Any

from kexec.domain.actions.apply_manifest import ApplyManifest
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.actions.cordon_node import CordonNode
from kexec.domain.actions.delete_pod import DeletePod
from kexec.domain.actions.drain_node import DrainNode
from kexec.domain.actions.patch_deployment import PatchDeployment
from kexec.domain.actions.rollback_deployment import RollbackDeployment
from kexec.domain.actions.rollout_restart import RolloutRestart
from kexec.domain.actions.scale_deployment import ScaleDeployment
from kexec.domain.actions.uncordon_node import UncordonNode
from kexec.domain.actions.update_configmap import UpdateConfigMap
from kexec.domain.actions.update_secret import UpdateSecret
from kexec.domain.fields import Param

ACTIONS: dict[str, Action[Any]] = {
    a.name: a
    for a in (
        ScaleDeployment(),
        RolloutRestart(),
        DeletePod(),
        PatchDeployment(),
        CordonNode(),
        DrainNode(),
        UncordonNode(),
        UpdateConfigMap(),
        UpdateSecret(),
        ApplyManifest(),
        RollbackDeployment(),
    )
}


def rollback_status(spec: RollbackSpec) -> dict[str, Any]:
    """``status.rollback``: parameters in the ``spec.parameters`` form of the inverse action
    (``{"scaleDeployment": {...}}``), so they can be pasted into a new execution."""
    out = spec.to_status()
    inverse = ACTIONS.get(spec.action)
    if inverse is not None and "parameters" in out:
        out["parameters"] = {inverse.key: out["parameters"]}
    return out


def rollback_parameters(action: Action[Any], parameters: Any) -> dict[str, Any]:
    """The inner parameter object of a recorded rollback (the keyed form, or the older
    inner form)."""
    params = dict(parameters or {})
    if list(params) == [action.key] and isinstance(params[action.key], dict):
        return dict(params[action.key])
    return params


__all__ = ["ACTIONS", "Action", "Context", "Param", "RollbackSpec", "rollback_parameters",
           "rollback_status"]
