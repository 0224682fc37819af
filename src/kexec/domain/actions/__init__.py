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


__all__ = ["ACTIONS", "Action", "Context", "Param", "RollbackSpec"]
