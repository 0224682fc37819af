"""The names kexec gives what it creates: one rule each."""

from __future__ import annotations

# The controller's own namespace (trusted by default) in every install.
CONTROLLER_NAMESPACE = "kubernaut-system"


def _dashed(action: str) -> str:
    return action.replace("_", "-")


def cluster_role_for(action: str) -> str:
    """``scale_deployment`` → ``kexec-action-scale-deployment`` (deploy/base/rbac/actions.yaml)."""
    return "kexec-action-" + _dashed(action)


def service_account_for(action: str) -> str:
    """``scale_deployment`` → ``kexec-scale-deployment``, made in each execution's namespace."""
    return "kexec-" + _dashed(action)


# The operator's storm-brake releases (`kexec brake release ACTION`), in the controller's
# namespace: one key per action (application/brake.py).
BRAKE_CONFIGMAP = "kexec-storm-brake"
